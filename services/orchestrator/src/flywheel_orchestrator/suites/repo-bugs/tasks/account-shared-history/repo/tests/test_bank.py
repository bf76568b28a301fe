import pytest
from bank import Account, InsufficientFunds, transfer


def test_deposit_and_withdraw():
    acc = Account("ann", 10)
    acc.deposit(5)
    acc.withdraw(12)
    assert acc.balance == 3


def test_overdraw_refused():
    acc = Account("bob", 4)
    with pytest.raises(InsufficientFunds):
        acc.withdraw(5)
    assert acc.balance == 4


def test_transfer_moves_money():
    a, b = Account("a", 50), Account("b")
    transfer(a, b, 20)
    assert (a.balance, b.balance) == (30, 20)


def test_histories_are_separate():
    a, b = Account("a"), Account("b")
    a.deposit(7)
    b.deposit(3)
    b.withdraw(1)
    assert a.history == [("deposit", 7)]
    assert b.history == [("deposit", 3), ("withdraw", 1)]
    assert Account("c").history == []
