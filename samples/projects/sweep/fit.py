"""A toy fit: prints `step: N` then scalars for each epoch."""

lr = 0.1
epochs = 3

for epoch in range(1, epochs + 1):
    print("step: %d" % epoch)
    loss = round(1.0 / (epoch * (1 + lr * 10)), 4)
    print("loss: %s" % loss)
    print("acc: %s" % round(1 - loss / 2, 4))
print("done: fit finished")
