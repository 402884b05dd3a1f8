import dagster as dg
import pandas as pd
import psycopg

from ..orders import replace_file_rows


class OrdersDatabase(dg.ConfigurableResource):
    """The PostgreSQL database the orders are loaded into: its table `orders`, made on first use."""

    url: str

    def replace_file_rows(self, partition_key: str, orders: pd.DataFrame) -> int:
        """The file's rows become `orders`, in one transaction; the number of rows."""
        with psycopg.connect(self.url) as conn:
            return replace_file_rows(conn, partition_key, orders)


@dg.definitions
def resources() -> dg.Definitions:
    # The bucket (`minio`) comes with the SftpSource components, from MINIO_*.
    return dg.Definitions(resources={"orders_db": OrdersDatabase(url=dg.EnvVar("ORDERS_DB_URL"))})
