"""A globals-style script: its flags are the module-level assignments."""

lr = 0.1
epochs = 2
name = "base"
fast = False
seed = None

print("lr=%s epochs=%s name=%s fast=%s seed=%s" % (lr, epochs, name, fast, seed))
