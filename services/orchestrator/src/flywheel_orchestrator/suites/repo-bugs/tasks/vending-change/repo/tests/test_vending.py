import pytest
from vending import VendingMachine


def test_exact_payment():
    vm = VendingMachine()
    vm.insert(95)
    assert vm.select("A2") == ("A2", 0)
    assert vm.state == "idle"


def test_select_without_coins():
    with pytest.raises(RuntimeError):
        VendingMachine().select("A1")


def test_short_balance_then_cancel():
    vm = VendingMachine()
    vm.insert(100)
    with pytest.raises(RuntimeError):
        vm.select("B1")
    assert vm.cancel() == 100


def test_change_for_overpayment():
    vm = VendingMachine()
    vm.insert(100)
    vm.insert(100)
    assert vm.select("A1") == ("A1", 80)
    assert vm.balance == 0
