from stock_report import low_stock, restock_plan, total_units


def test_low_stock_scarcest_first():
    stock = {"zinc": 1, "anchor": 4, "cable": 10, "bracket": 0}
    assert low_stock(stock, 5) == ["bracket", "zinc", "anchor"]


def test_low_stock_ties_by_sku():
    assert low_stock({"b": 2, "a": 2, "c": 9}, 3) == ["a", "b"]


def test_total_units():
    assert total_units({"a": 2, "b": 5}) == 7


def test_restock_plan():
    assert restock_plan({"a": 2, "b": 12, "c": 0}, 10) == {"a": 8, "c": 10}
