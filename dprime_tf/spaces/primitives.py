"""Operation names of the search spaces; their order fixes alpha's columns."""

CNN_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

RNN_PRIMITIVES = ("none", "tanh", "relu", "sigmoid", "identity")


def num_edges(num_inputs: int, steps: int) -> int:
    """Edges of a cell whose node i takes one edge from each earlier state."""
    return sum(num_inputs + i for i in range(steps))
