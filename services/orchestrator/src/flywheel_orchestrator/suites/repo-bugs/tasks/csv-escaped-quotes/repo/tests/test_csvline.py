from csvline import split_line


def test_plain_fields():
    assert split_line("a,b,c") == ["a", "b", "c"]


def test_empty_fields():
    assert split_line("a,,b,") == ["a", "", "b", ""]


def test_quoted_comma():
    assert split_line('x,"1,5",y') == ["x", "1,5", "y"]


def test_escaped_quotes():
    assert split_line('a,"say ""hi"", ok",b') == ["a", 'say "hi", ok', "b"]


def test_escaped_quote_mid_field():
    assert split_line('"6"" pipe",4') == ['6" pipe', "4"]
