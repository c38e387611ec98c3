"""`cmm data fetch` against a loopback HTTP server serving real files."""

import functools
import http.server
import shutil
import threading

import pytest

from cmm.data.fetch import fetch_dataset
from cmm.errors import CmmError, InputError
from cmm.io import sha256_file

REL = "lobster/AAPL_2012-06-21_34200000_57600000_message_10.csv"


@pytest.fixture
def server(tmp_path, data_dir):
    root = tmp_path / "served"
    (root / "lobster").mkdir(parents=True)
    for name in ("message", "orderbook"):
        src = data_dir / REL.replace("message", name)
        shutil.copy(src, root / "lobster" / src.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def spec_file(tmp_path, base_url, data_dir, sha=None):
    sources = []
    for name in ("message", "orderbook"):
        rel = REL.replace("message", name)
        digest = sha or sha256_file(data_dir / rel)
        sources.append(f"  - {{path: {rel}, url: '{base_url}/{rel}', sha256: {digest}}}")
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: fetched\nformat: lobster\nfiles: [" + REL + "]\n"
        "instrument: {tick_size: 0.01, lot_size: 1}\nsources:\n" + "\n".join(sources) + "\n")
    return path


def test_fetch_downloads_verifies_and_skips_present(tmp_path, server, data_dir):
    url, _ = server
    spec = spec_file(tmp_path, url, data_dir)
    out = tmp_path / "data"
    got = list(fetch_dataset(str(spec), data_dir=out))
    assert [s for _, s in got] == ["fetched", "fetched"]
    assert sha256_file(out / REL) == sha256_file(data_dir / REL)
    assert [s for _, s in fetch_dataset(str(spec), data_dir=out)] == ["present", "present"]


def test_checksum_mismatch_leaves_nothing(tmp_path, server, data_dir):
    url, _ = server
    spec = spec_file(tmp_path, url, data_dir, sha="ab" * 32)
    out = tmp_path / "data"
    with pytest.raises(InputError, match="checksum mismatch"):
        list(fetch_dataset(str(spec), data_dir=out))
    assert not any(p.is_file() for p in out.rglob("*"))


def test_unreachable_source_is_reported(tmp_path, server, data_dir):
    url, root = server
    shutil.rmtree(root / "lobster")
    spec = spec_file(tmp_path, url, data_dir)
    with pytest.raises(CmmError, match="download failed"):
        list(fetch_dataset(str(spec), data_dir=tmp_path / "data"))
