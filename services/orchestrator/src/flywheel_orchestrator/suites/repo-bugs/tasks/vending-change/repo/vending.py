"""A vending machine as a small state machine: idle -> paying -> idle."""

PRICES = {"A1": 120, "A2": 95, "B1": 150}


class VendingMachine:
    def __init__(self):
        self.state = "idle"
        self.balance = 0

    def insert(self, cents):
        if cents <= 0:
            raise ValueError("coins must be positive")
        self.balance += cents
        self.state = "paying"

    def select(self, code):
        """Dispense `code` and return (item, change); refuse when the balance is short."""
        if self.state != "paying":
            raise RuntimeError("insert coins first")
        price = PRICES[code]
        if self.balance < price:
            raise RuntimeError(f"{code} costs {price}, balance is {self.balance}")
        change = price - self.balance
        self.balance = 0
        self.state = "idle"
        return code, change

    def cancel(self):
        """Return the inserted money and go back to idle."""
        refund, self.balance, self.state = self.balance, 0, "idle"
        return refund
