from components import components


def test_isolated_nodes():
    assert components([3, 1, 2], []) == [[1], [2], [3]]


def test_forward_chain():
    assert components([1, 2, 3, 4], [(1, 2), (2, 3)]) == [[1, 2, 3], [4]]


def test_edge_pointing_back():
    assert components([1, 2, 3], [(3, 1)]) == [[1, 3], [2]]


def test_star_from_leaves():
    edges = [("b", "hub"), ("c", "hub"), ("d", "hub")]
    assert components(["hub", "b", "c", "d"], edges) == [["b", "c", "d", "hub"]]
