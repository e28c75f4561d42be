"""The IP-Adapter and image encoder of the built-in shapes model: training, evaluation, the shipped weights."""
