import pytest
from inventory import Inventory, OutOfStock


def test_add_accumulates():
    inv = Inventory()
    inv.add("bolt", 3)
    inv.add("bolt", 4)
    assert inv.count("bolt") == 7


def test_remove_partial():
    inv = Inventory()
    inv.add("nut", 10)
    inv.remove("nut", 4)
    assert inv.count("nut") == 6


def test_remove_more_than_on_hand_raises():
    inv = Inventory()
    inv.add("nut", 2)
    with pytest.raises(OutOfStock):
        inv.remove("nut", 3)


def test_remove_entire_stock():
    inv = Inventory()
    inv.add("washer", 5)
    inv.remove("washer", 5)
    assert inv.count("washer") == 0
    assert inv.skus() == []
