"""A tiny stock ledger keyed by SKU."""


class OutOfStock(Exception):
    """Raised when a removal asks for more units than are on hand."""


class Inventory:
    def __init__(self):
        self._stock = {}

    def add(self, sku, qty):
        if qty <= 0:
            raise ValueError("quantity must be positive")
        self._stock[sku] = self._stock.get(sku, 0) + qty

    def remove(self, sku, qty):
        on_hand = self._stock.get(sku, 0)
        if qty >= on_hand:
            raise OutOfStock(sku)
        self._stock[sku] = on_hand - qty

    def count(self, sku):
        return self._stock.get(sku, 0)

    def skus(self):
        return sorted(sku for sku, n in self._stock.items() if n > 0)
