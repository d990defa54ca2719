"""A toy training script: flags are module globals, loss is printed."""

lr = 0.1
epochs = 3
opt = "sgd"

loss = abs(lr - 0.01) * 10 + 1.0 / epochs + (0.05 if opt == "sgd" else 0.0)
print("loss: %.4f" % loss)
