"""The read-only web pages of ``wanllmdb server``, in a real headless browser against a real server.

Versions are logged over HTTP (``HttpRegistry``) with runs, so the pages show aliases, tags, sizes, digests,
presigned download links and lineage; the browser logs in, clicks from project to file download and logs out.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from urllib.parse import unquote, urlsplit

import pytest
import requests

from tests.support.browser import require_browser, start_browser

pytestmark = pytest.mark.server

ODD_TYPE = '<img src=x onerror="document.title=\'pwned\'">dataset & "co"'
ODD_PATH = 'dir/<script>document.title="pwned"</script> & "q" #1?.txt'
ODD_RUN = "<b>bold</b> run & co"


@pytest.fixture
def browser(tmp_path):
    require_browser()
    driver = start_browser(str(tmp_path))
    yield driver
    driver.quit()


def _log(registry, project, name, files, *, type_="dataset", run_id=None, aliases=(), tags=(), refs=None,
         description=None):  # fmt: skip
    """Log ``files`` (artifact path -> bytes, plus ``refs``: path -> URI) as a version; returns it."""
    from wanllmdb.manifest import Manifest, ManifestEntry
    from wanllmdb.manifest.entry import unchecked_reference
    from wanllmdb.registry.base import DraftSpec

    local = {}
    entries = []
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"wanllmdb-web-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    for i, (path, data) in enumerate(files.items()):
        sha = hashlib.sha256(data).hexdigest()
        entries.append(ManifestEntry(path, len(data), hashlib.md5(data).hexdigest(), sha))
        local[sha] = os.path.join(tmp, str(i))
        with open(local[sha], "wb") as f:
            f.write(data)
    entries += [unchecked_reference(path, uri) for path, uri in (refs or {}).items()]
    spec = DraftSpec(project, name, type_, Manifest.from_entries(entries), description=description, run_id=run_id)
    draft = registry.create_draft(spec)
    for target in draft.missing:
        registry.upload_blob(draft, target, local[target.sha256])
    return registry.finalize_draft(draft.id, list(aliases), list(tags)).version


def _run(registry, project, run_id, name):
    from wanllmdb.registry.base import RunSpec

    return registry.create_run(RunSpec(project, run_id, name))


@pytest.fixture
def populated(make_server):
    """A keyed server holding: vision/raw:v1 (input) -> run train-1 -> vision/mnist v1, v2 -> run eval-1 ->
    vision/report:v1; plus a project 'other'."""
    server = make_server()
    registry = server.registry()
    try:
        _log(registry, "vision", "raw", {"raw.bin": b"raw bytes"})
        train = _run(registry, "vision", "run-train-1", "train-1")
        registry.record_use(train.id, "vision", "raw", 1)
        _log(registry, "vision", "mnist", {"train.csv": b"a,b\n1,2\n"}, run_id=train.id)
        files = {"train.csv": b"a,b\n1,2\n3,4\n", "images/0.png": os.urandom(3000), "README.txt": b"digits"}
        _log(registry, "vision", "mnist", files, run_id=train.id, aliases=["best"], tags=["reviewed"],
             refs={"remote/big.bin": "https://example.com/big.bin"}, description="the digits")  # fmt: skip
        evaluation = _run(registry, "vision", "run-eval-1", "eval-1")
        registry.record_use(evaluation.id, "vision", "mnist", 2)
        _log(registry, "vision", "report", {"report.md": b"# accuracy 0.99"}, run_id=evaluation.id)
        _log(registry, "other", "thing", {"x": b"x"})
    finally:
        registry.close()
    return server, files


def _login(driver, key):
    driver.find_element("id", "key").send_keys(key)
    # The form posts and a new page loads (the page asked for, or the form again with the error).
    _follow(driver, driver.find_element("id", "login"))


def _follow(driver, element):
    """Click a link or button and wait until the page it loads has replaced this one (else the next
    assertion may read the old page's URL)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element("tag name", "html")
    element.click()

    def replaced(_driver) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # chromedriver answers "Node with given id does not belong to the document" for a node of a document
            # that has just been replaced: the new page is there (its load is awaited below).
            return "does not belong to the document" in str(exc)
        return False

    WebDriverWait(driver, 10).until(replaced)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _path(driver) -> str:
    return unquote(urlsplit(driver.current_url).path)


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_browse_from_projects_to_a_file_download_then_log_out(browser, populated):
    server, files = populated
    browser.get(server.url + "/")
    assert _path(browser) == "/login"  # no session: redirected

    _login(browser, "not-the-key")
    assert "invalid API key" in browser.find_element("id", "error").text
    assert browser.get_cookies() == []

    _login(browser, server.api_key)
    assert _path(browser) == "/"
    assert browser.title.startswith("Projects")
    cookie = browser.get_cookie("wanllmdb_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert server.api_key not in cookie["value"]
    rows = browser.find_elements("css selector", "#projects tbody tr")
    assert [r.find_element("tag name", "a").text for r in rows] == ["other", "vision"]

    _follow(browser, browser.find_element("link text", "vision"))
    assert _path(browser) == "/ui/projects/vision"
    artifacts = {
        r.find_element("css selector", "td a").text: [td.text for td in r.find_elements("tag name", "td")]
        for r in browser.find_elements("css selector", "#artifacts tbody tr")
    }
    assert set(artifacts) == {"mnist", "raw", "report"}
    assert artifacts["mnist"][1:4] == ["dataset", "v2", "2"]

    _follow(browser, browser.find_element("link text", "mnist"))
    assert _path(browser) == "/ui/projects/vision/artifacts/mnist"
    v2 = browser.find_element("id", "v2")
    assert [e.text for e in v2.find_elements("css selector", ".alias")] == ["best", "latest"]
    assert [e.text for e in v2.find_elements("css selector", ".tag")] == ["reviewed"]
    assert v2.find_element("css selector", ".size").get_attribute("data-bytes") == str(sum(map(len, files.values())))
    assert v2.find_element("css selector", ".files").text == "4"
    assert "train-1" in v2.find_element("css selector", ".run").text
    assert browser.find_element("id", "v1").find_elements("css selector", ".alias") == []

    _follow(browser, v2.find_element("link text", "v2"))
    assert _path(browser) == "/ui/projects/vision/artifacts/mnist/versions/v2"
    assert browser.title.startswith("vision/mnist:v2")
    assert browser.find_element("id", "description").text == "the digits"
    shown = {}
    for row in browser.find_elements("css selector", "#files tr.file"):
        shown[row.find_element("css selector", ".path").text] = row
    assert set(shown) == set(files) | {"remote/big.bin"}
    for path, data in files.items():
        row = shown[path]
        assert row.find_element("css selector", ".size").get_attribute("data-bytes") == str(len(data))
        assert row.find_element("css selector", ".sha256").text == hashlib.sha256(data).hexdigest()
        assert row.find_element("css selector", ".md5").text == hashlib.md5(data).hexdigest()
        href = row.find_element("css selector", "a.download").get_attribute("href")
        assert "sig=" in href and "/api/v1/blobs/" in href
        answer = requests.get(href, timeout=10)  # a presigned URL: no key, no cookie
        assert answer.status_code == 200 and answer.content == data
    ref = shown["remote/big.bin"].find_element("css selector", "a.ref")
    assert ref.get_attribute("href") == "https://example.com/big.bin"

    logged_by = browser.find_element("id", "logged-by").text
    assert "train-1" in logged_by and "vision/raw:v1" in logged_by and "vision/mnist:v1" in logged_by
    used_by = browser.find_element("id", "used-by").text
    assert "eval-1" in used_by and "vision/report:v1" in used_by
    labels = [t.text for t in browser.find_elements("css selector", "svg.lineage text")]
    assert {"▶ train-1", "▶ eval-1", "mnist:v2", "raw:v1", "report:v1"} <= set(labels)

    # Lineage links lead on: to the report the evaluation run logged.
    _follow(browser, browser.find_element("id", "used-by").find_element("link text", "vision/report:v1"))
    assert _path(browser) == "/ui/projects/vision/artifacts/report/versions/v1"
    assert "eval-1" in browser.find_element("id", "logged-by").text
    assert "No run" not in browser.find_element("id", "lineage").text

    # The pages' cookie does not open the JSON API.
    jar = {"wanllmdb_session": browser.get_cookie("wanllmdb_session")["value"]}
    assert requests.get(server.url + "/api/v1/projects", cookies=jar, timeout=10).status_code == 401
    assert requests.get(server.url + "/ui/projects/vision", cookies=jar, timeout=10, allow_redirects=False).ok

    _follow(browser, browser.find_element("id", "logout"))
    assert _path(browser) == "/login"
    assert browser.get_cookie("wanllmdb_session") is None
    browser.get(server.url + "/ui/projects/vision")
    assert _path(browser) == "/login"


def test_login_returns_to_the_page_asked_for(browser, populated):
    server, _ = populated
    browser.get(server.url + "/ui/projects/vision/artifacts/mnist/versions/best")
    assert _path(browser) == "/login"
    _login(browser, server.api_key)
    assert _path(browser) == "/ui/projects/vision/artifacts/mnist/versions/best"
    assert browser.title.startswith("vision/mnist:v2")
    browser.get(server.url + "/ui/projects/vision/artifacts/mnist/versions/v9")
    assert "not found" in browser.find_element("id", "error").text


def test_odd_text_is_escaped_and_links_are_quoted(browser, make_server):
    server = make_server(api_key=None)  # no keys: the pages are open, like the API
    registry = server.registry()
    try:
        run = _run(registry, "p.1", "r-odd", ODD_RUN)
        _log(registry, "p.1", "a.b_c-1", {ODD_PATH: b"odd"}, type_=ODD_TYPE, run_id=run.id,
             description="<i>not italic</i>")  # fmt: skip
    finally:
        registry.close()
    browser.get(server.url + "/")
    assert _path(browser) == "/"
    assert browser.find_elements("id", "logout") == []
    _follow(browser, browser.find_element("link text", "p.1"))
    assert browser.find_element("css selector", "#artifacts td.type").text == ODD_TYPE
    _follow(browser, browser.find_element("link text", "a.b_c-1"))
    assert _path(browser) == "/ui/projects/p.1/artifacts/a.b_c-1"
    assert browser.find_element("id", "type").text == ODD_TYPE
    assert ODD_RUN in browser.find_element("css selector", "#v1 .run").text
    _follow(browser, browser.find_element("link text", "v1"))
    assert browser.find_element("css selector", "#files .path").text == ODD_PATH
    assert browser.find_element("id", "description").text == "<i>not italic</i>"
    assert ODD_RUN in browser.find_element("id", "logged-by").text
    # Nothing the names carry became markup: no injected element, no script ran.
    main = browser.find_element("tag name", "main")
    for tag in ("img", "script", "b", "i"):
        assert main.find_elements("tag name", tag) == []
    assert "pwned" not in browser.title
    href = browser.find_element("css selector", "a.download").get_attribute("href")
    assert requests.get(href, timeout=10).content == b"odd"
    # Without keys, /login has nothing to ask.
    browser.get(server.url + "/login")
    assert _path(browser) == "/"


def test_pages_refused_without_a_session_and_api_untouched(make_server):
    """Plain HTTP (no browser needed): the redirects, a wrong key, a forged cookie, cross-site POSTs, and the
    HTML routes kept out of the OpenAPI description."""
    server = make_server()
    for path in ("/", "/ui/projects/x", "/ui/projects/x/artifacts/y/versions/v1"):
        answer = requests.get(server.url + path, allow_redirects=False, timeout=10)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    wrong = requests.post(server.url + "/login", data={"key": "nope"}, allow_redirects=False, timeout=10)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    forged = {"wanllmdb_session": f"{int(time.time()) + 999}.{'0' * 32}.{'0' * 64}"}
    assert requests.get(server.url + "/", cookies=forged, allow_redirects=False, timeout=10).status_code == 303
    cross = requests.post(server.url + "/login", data={"key": server.api_key}, allow_redirects=False, timeout=10,
                          headers={"Origin": "https://evil.example"})  # fmt: skip
    assert cross.status_code == 403 and "set-cookie" not in cross.headers
    good = requests.post(server.url + "/login", data={"key": server.api_key, "next": "//evil.example/x"},
                         allow_redirects=False, timeout=10)  # fmt: skip
    assert good.status_code == 303 and good.headers["location"] == "/"
    paths = requests.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert all(p.startswith("/api/v1/") for p in paths)


def test_session_cookies_unit():
    from wanllmdb.server.web import safe_next
    from wanllmdb.server.web_auth import WebSessions, cookie_from_header

    sessions = WebSessions(b"s" * 32, ["key-1", "key-2"])
    cookie = sessions.issue("key-2")
    assert sessions.valid(cookie) and "key-2" not in cookie
    assert not sessions.valid(None) and not sessions.valid("") and not sessions.valid("1.2")
    expires, fingerprint, signature = cookie.split(".")
    assert not sessions.valid(f"{int(expires) + 1}.{fingerprint}.{signature}")  # tampered expiry
    assert not WebSessions(b"t" * 32, ["key-2"]).valid(cookie)  # another server secret
    assert not WebSessions(b"s" * 32, ["key-1"]).valid(cookie)  # the key was removed
    assert not WebSessions(b"s" * 32, ["key-2"], ttl=-1).valid(WebSessions(b"s" * 32, ["key-2"], ttl=-1).issue("key-2"))
    assert WebSessions(b"s" * 32, []).valid(None)  # no keys: open
    assert cookie_from_header(f"a=b; wanllmdb_session={cookie}; c=d") == cookie
    assert safe_next("/ui/projects/p?x=1") == "/ui/projects/p?x=1"
    for bad in ("//evil.example", "https://evil.example/", "/api/v1/projects", "/\\evil", "", None):
        assert safe_next(bad) == "/"


def test_lineage_picture_is_bounded():
    from wanllmdb.registry.base import RunInfo, VersionInfo
    from wanllmdb.server.web import MAX_NODES_PER_COLUMN, Lineage, RunLineage, _graph

    def version(name, number=1):
        return VersionInfo("p", name, "dataset", number, "d" * 64, (), 0.0, 1, 1)

    current = version("data")
    consumers = [RunLineage(RunInfo(f"r{i}", "p", f"run-{i}", "finished", 0.0), [version(f"out{i}")], [current])
                 for i in range(40)]  # fmt: skip
    graph = _graph(current, Lineage(logged_by=None, used_by=consumers))
    runs = [n for n in graph["nodes"] if n["kind"] == "run"]
    assert len(runs) == MAX_NODES_PER_COLUMN
    assert [n["label"] for n in graph["nodes"] if n["kind"] == "more"] == [f"+{40 - MAX_NODES_PER_COLUMN} more"]
    assert [n["label"] for n in graph["nodes"] if n["kind"] == "current"] == ["data:v1"]
    assert len(graph["lines"]) == 2 * MAX_NODES_PER_COLUMN
