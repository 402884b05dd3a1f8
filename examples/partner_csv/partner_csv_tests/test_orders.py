"""The orders of a CSV file, and the files that are not orders files: each refused with what
is wrong in it, by line and column. No server (loading into PostgreSQL, and the whole pipeline:
sftp_minio_assets_tests/integration/test_example.py)."""

import io
from datetime import date

import pytest
from partner_csv.orders import MalformedOrders, read_orders

HEADER = "order_id,customer,amount,ordered_on\n"


def read(text: str):
    return read_orders(io.BytesIO(text.encode()), "orders.csv")


def test_orders_are_read_with_their_line_and_typed_values():
    orders = read("ordered_on, amount ,customer,order_id\n2026-12-01,120.50, Globex ,A-1\n")
    assert orders.to_dict("records") == [
        {
            "line": 2,
            "order_id": "A-1",
            "customer": "Globex",
            "amount": "120.50",
            "ordered_on": date(2026, 12, 1),
        }
    ]


def test_a_header_alone_is_a_file_of_no_orders():
    assert read(HEADER).empty


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "order_id,client,amount,ordered_on\nA-1,Globex,1,2026-12-01\n",
            "orders.csv: its header has the columns ['order_id', 'client', 'amount', "
            "'ordered_on']; an orders file has ['order_id', 'customer', 'amount', 'ordered_on']",
        ),
        (
            HEADER + "A-1,Globex,twelve,2026-12-01\n",
            "orders.csv: a bad value: line 2, amount 'twelve' is not a number",
        ),
        (
            HEADER + "A-1,Globex,1,2026-12-01\nA-2,,inf,01/12/2026\n",
            "orders.csv: 3 bad values: line 3, amount 'inf' is not a number; line 3, customer "
            "'' is empty; line 3, ordered_on '01/12/2026' is not a YYYY-MM-DD date",
        ),
        (HEADER + "A-1,Globex\n", "line 2, amount '' is not a number"),
        (HEADER + "A-1,Globex,1,2026-12-01,extra\n", "its rows have more fields than its header"),
        (
            HEADER + "A-1,Globex,1,2026-12-01\nA-2,Globex,1,2026-12-01,extra\n",
            "not a CSV file of orders: Error tokenizing data",
        ),
        ("", "orders.csv: not a CSV file of orders: No columns to parse from file"),
    ],
)
def test_a_file_that_is_not_orders_is_refused_with_what_is_wrong(text, message):
    with pytest.raises(MalformedOrders) as refused:
        read(text)
    assert message in str(refused.value)


def test_many_bad_values_are_counted_and_the_first_named():
    rows = "".join(f"A-{i},Globex,x,2026-12-01\n" for i in range(8))
    with pytest.raises(MalformedOrders, match=r"8 bad values: line 2, .* and 3 more$"):
        read(HEADER + rows)


def test_bytes_that_are_not_utf8_are_refused():
    with pytest.raises(MalformedOrders, match="not a CSV file of orders: 'utf-8' codec"):
        read_orders(io.BytesIO(HEADER.encode() + b"A-1,Caf\xe9,1,2026-12-01\n"), "orders.csv")
