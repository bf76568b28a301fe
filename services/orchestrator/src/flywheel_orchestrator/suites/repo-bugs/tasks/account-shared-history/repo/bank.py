"""Bank accounts that keep a history of their transactions."""


class InsufficientFunds(Exception):
    pass


class Account:
    history = []

    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("deposit must be positive")
        self.balance += amount
        self.history.append(("deposit", amount))

    def withdraw(self, amount):
        if amount > self.balance:
            raise InsufficientFunds(f"{self.owner} has {self.balance}")
        self.balance -= amount
        self.history.append(("withdraw", amount))


def transfer(src, dst, amount):
    """Move `amount` from `src` to `dst`; nothing changes if `src` cannot pay."""
    src.withdraw(amount)
    dst.deposit(amount)
