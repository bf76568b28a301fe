from flatten import depth, flatten


def test_nested_lists():
    assert flatten([1, [2, [3, []], 4]]) == [1, 2, 3, 4]


def test_strings_stay_whole():
    assert flatten(["ab", ["cd"]]) == ["ab", "cd"]


def test_depth():
    assert depth([1, (2, [3])]) == 3
    assert depth(5) == 0


def test_tuples_flattened():
    assert flatten([1, (2, 3), [4, (5,)]]) == [1, 2, 3, 4, 5]
