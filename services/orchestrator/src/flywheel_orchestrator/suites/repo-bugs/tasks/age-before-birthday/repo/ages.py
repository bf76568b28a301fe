"""Age in completed years."""


def age_on(birth, today):
    """Completed years between the dates `birth` and `today`."""
    if today < birth:
        raise ValueError("today is before the birth date")
    years = today.year - birth.year
    if (today.month, today.day) > (birth.month, birth.day):
        years -= 1
    return years


def is_adult(birth, today, threshold=18):
    return age_on(birth, today) >= threshold


def youngest(people, today):
    """Name of the youngest person in a {name: birth date} mapping."""
    return min(people, key=lambda name: age_on(people[name], today))
