"""A training curve: loss falls with the learning rate, with some noise.

Prints `step: N`, then `loss:` and `acc:` for each epoch, as a real
training loop logs them.
"""

import math
import random

lr = 0.03
epochs = 40
seed = 1

random.seed(seed)
for epoch in range(epochs):
    loss = 2.0 * math.exp(-lr * 4 * epoch) + 0.1 + random.gauss(0, 0.03)
    print("step: %d" % epoch)
    print("loss: %.4f" % loss)
    print("acc: %.4f" % (1 - loss / 2.2))
