"""Split one CSV line into fields: comma separated, double-quoted fields may hold
commas, and a doubled quote ("") inside a quoted field stands for one quote."""


def split_line(line):
    fields, buf = [], []
    quoted = False
    i = 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == '"' and line[i + 1 : i + 2] == '"':
                buf.append('"')
            elif ch == '"':
                quoted = False
            else:
                buf.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            fields.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    fields.append("".join(buf))
    return fields
