"""Reports over a {sku: quantity} mapping."""


def low_stock(stock, limit):
    """SKUs with fewer than `limit` units, scarcest first (ties by SKU)."""
    low = [(sku, qty) for sku, qty in stock.items() if qty < limit]
    low.sort(key=lambda item: (item[1], item[0]))
    return [sku for sku, _ in low]


def total_units(stock):
    return sum(stock.values())


def restock_plan(stock, target):
    """Units to order per SKU to bring each one up to `target`."""
    return {sku: target - qty for sku, qty in stock.items() if qty < target}
