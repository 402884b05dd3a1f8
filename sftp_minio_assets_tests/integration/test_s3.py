"""The object store on the real S3 server: open multipart uploads listed page after page.
(Object keys and bucket names, with no server: unit/s3/test_store.py.)"""

from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.mark.integration
@pytest.mark.parametrize("page_size", [1000, 7])
def test_open_uploads_are_listed_past_the_first_page(env, page_size):
    """S3 lists at most 1,000 uploads a page: the stale-upload sweep saw only the first page.
    Pages of 7 make the test's 40 uploads take several."""
    store = env.store
    keys = [f"default/many/{i:02d}.bin" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda key: store.create_multipart(key, {}), keys))
    listed = store.list_multipart_uploads("default/many/", page_size=page_size)
    assert sorted(upload["Key"] for upload in listed) == keys
    assert {upload["UploadId"] for upload in listed} == ids
