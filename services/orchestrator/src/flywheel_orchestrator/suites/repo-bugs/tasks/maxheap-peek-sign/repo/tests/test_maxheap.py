from maxheap import Leaderboard


def board():
    lb = Leaderboard()
    for player, score in [("bob", 75), ("ann", 90), ("cy", 80)]:
        lb.add(player, score)
    return lb


def test_pop_best():
    assert board().pop_best() == ("ann", 90)


def test_top_two():
    assert board().top(2) == [("ann", 90), ("cy", 80)]


def test_empty_best():
    assert Leaderboard().best() is None


def test_best_peeks_with_positive_score():
    lb = board()
    assert lb.best() == ("ann", 90)
    assert lb.pop_best() == ("ann", 90)
