"""The demo's per-method options: a bit-width search gets the setting's bits as its budget."""

from lowbit.__main__ import DEMO_ITERS, _demo_config


def test_demo_gives_clado_the_bits_as_its_average_budget():
    assert _demo_config("clado", False, 3) == {"avg_bits": 3.0}


def test_demo_shortens_iterative_methods_and_leaves_nearest_alone():
    assert _demo_config("adaround", False, 4) == {"iters": DEMO_ITERS[False]}
    assert _demo_config("adaround", True, 4) == {"iters": DEMO_ITERS[True]}
    assert _demo_config("nearest", False, 4) is None
