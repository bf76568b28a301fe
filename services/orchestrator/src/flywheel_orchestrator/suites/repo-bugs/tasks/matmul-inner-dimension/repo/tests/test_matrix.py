import pytest
from matrix import identity, matmul, transpose


def test_square_product():
    assert matmul([[1, 2], [3, 4]], [[5, 6], [7, 8]]) == [[19, 22], [43, 50]]


def test_identity_and_transpose():
    m = [[1, 2, 3], [4, 5, 6]]
    assert matmul(identity(2), m) == m
    assert transpose(m) == [[1, 4], [2, 5], [3, 6]]


def test_shape_mismatch():
    with pytest.raises(ValueError):
        matmul([[1, 2]], [[1, 2]])


def test_row_times_column():
    assert matmul([[1, 2, 3]], [[4], [5], [6]]) == [[32]]


def test_rectangular_product():
    a = [[1, 0, 2], [0, 1, 1]]
    b = [[1, 2], [3, 4], [5, 6]]
    assert matmul(a, b) == [[11, 14], [8, 10]]
