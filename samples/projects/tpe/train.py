"""A stand-in for a training script with a mixed search space: a learning
rate best searched on a log scale, a choice of optimizer, a whole number of
layers and a dropout rate that depends on it. Prints the loss a batch
minimizes, and an accuracy to maximize."""

import math

lr = 0.01
opt = "sgd"
layers = 2
dropout = 0.1

best_lr = {"sgd": -1.5, "adam": -3.5, "rmsprop": -3.0}[opt]
loss = (0.2 * (math.log10(lr) - best_lr) ** 2 + 0.05 * (layers - 4) ** 2 +
        4 * (dropout - 0.08 * layers) ** 2 +
        {"sgd": 0.1, "adam": 0.0, "rmsprop": 0.05}[opt])
print("loss: %.6f" % loss)
print("acc: %.6f" % math.exp(-loss))
