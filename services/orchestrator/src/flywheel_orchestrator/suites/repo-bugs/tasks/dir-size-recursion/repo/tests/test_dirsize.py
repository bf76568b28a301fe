from dirsize import largest_dirs, total_size

TREE = {
    "name": "root",
    "children": [
        {"name": "a.txt", "size": 10},
        {
            "name": "src",
            "children": [
                {"name": "m.py", "size": 30},
                {"name": "lib", "children": [{"name": "x", "size": 5}]},
            ],
        },
        {"name": "empty", "children": []},
    ],
}


def test_single_file():
    assert total_size({"name": "f", "size": 7}) == 7


def test_flat_directory():
    assert total_size({"name": "d", "children": [{"name": "a", "size": 1}, {"name": "b", "size": 2}]}) == 3


def test_empty_directory():
    assert total_size(TREE["children"][2]) == 0


def test_nested_total():
    assert total_size(TREE) == 45


def test_largest_dirs():
    assert largest_dirs(TREE, 2) == [("root", 45), ("root/src", 35)]
