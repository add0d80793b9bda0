"""Spec: the app in a real browser (Debian's Chromium, headless, driven by Playwright) on the offline demo model.

The app is started as users start it (`python app.py`, default model id, no network), so it runs on the bundled demo
model behind its banner. Screenshots of every step go to artifacts/screenshots/ (look at them when a test fails).
"""

from __future__ import annotations

import re
import shutil
import time

import pytest

from tests.ui.support import DEMO_MODEL, EXAMPLES, SCREENSHOTS, running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 90_000  # shared CPUs: generous waits, but every wait is for a condition

USER = '#chat [data-testid="user"] .message-content'
REPLY = '#chat .message:not(.thought) > [data-testid="bot"] .message-content'
SPEED = "#chat .thought .title"
# Record every rendering of the last reply, to see it stream in.
OBSERVE_REPLIES = """() => {
  window.__frames = [];
  const chat = document.querySelector('#chat');
  const record = () => {
    const replies = chat.querySelectorAll('.message:not(.thought) > [data-testid="bot"] .message-content');
    const text = replies.length ? replies[replies.length - 1].innerText : null;
    if (window.__frames[window.__frames.length - 1] !== text) window.__frames.push(text);
  };
  new MutationObserver(record).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def app_url(app_model_dir):
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    with running_app("--model", "cobra+3b", "--fallback-model", str(app_model_dir), "--concurrency", "2") as url:
        yield url


@pytest.fixture(scope="module")
def browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str, full_page: bool = True):
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)

    return shot


def open_page(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#chat")
    page.wait_for_function("() => window.gradio_config !== undefined")
    return context, page


def pick_example(page, index: int):
    page.locator("#examples button").nth(index).click()
    page.wait_for_selector("#image-input img")
    # the image change event has run once the suggestions show this example's own questions
    page.wait_for_function("""() => {
        const b = document.querySelectorAll('#suggestions button');
        return b.length > 0 && !b[0].innerText.includes('Is there a red circle in the image?')
               && document.querySelectorAll('#image-input img').length > 0;
    }""")


def users(page):
    return page.locator(USER).all_inner_texts()


def replies(page):
    return page.locator(REPLY).all_inner_texts()


def speed_lines(page):
    return page.locator(SPEED).all_inner_texts()


def ask(page, question: str, expected_turns: int):
    page.fill("#message textarea", question)
    page.locator("#send").click()
    wait_for_speed_lines(page, expected_turns)


def wait_for_speed_lines(page, n: int):
    page.wait_for_function(f"() => document.querySelectorAll('{SPEED}').length === {n}")


def expected_answer(example_index: int, question: str) -> str | None:
    from cobra_app.ui.examples import load_examples

    return dict(load_examples(EXAMPLES)[example_index].questions).get(question)


def count_answer(example_index: int) -> str:
    """The right reply to "How many objects are there?" about an example image."""
    from cobra_app.demo.conversations import NUMBERS
    from cobra_app.ui.examples import load_examples

    return NUMBERS[len(load_examples(EXAMPLES)[example_index].objects)].capitalize() + "."


def test_start_page_shows_the_offline_banner_and_model_info(browser, app_url, shots):
    context, page = open_page(browser, app_url)
    banner = page.locator("#fallback-banner")
    banner.wait_for()
    assert "Offline demo model" in banner.inner_text() and "cobra+3b" in banner.inner_text()
    page.locator("#model-panel").click()
    info = page.locator("#model-info")
    info.wait_for()
    text = info.inner_text()
    for field in ("Model", "Device", "Weights dtype", "Parameters", "Mamba ops", "Conversation state"):
        assert field in text
    assert re.search(r"Device\s+cpu", text) and re.search(r"Mamba ops\s+\S+", text)
    assert page.locator("#image-input").get_by_label("Upload file").count() + \
        page.locator("#image-input button").count() >= 3  # upload, webcam and clipboard sources
    shots(page, "01-start")
    context.close()


def test_chat_streams_then_regenerate_undo_clear(browser, app_url, shots, model_reply):
    context, page = open_page(browser, app_url)
    pick_example(page, 0)
    suggestion = page.locator("#suggestions button").first
    question = suggestion.inner_text().strip()
    suggestion.click()
    page.wait_for_function("q => document.querySelector('#message textarea').value === q", arg=question)
    page.evaluate(OBSERVE_REPLIES)
    page.locator("#send").click()
    page.wait_for_function(f"() => document.querySelectorAll('{USER}').length === 1")
    assert page.input_value("#message textarea") == ""  # sent: the box is free for the next question
    wait_for_speed_lines(page, 1)
    final = replies(page)[0]
    frames = [f for f in page.evaluate("window.__frames") if f]
    growing = [f for f in frames if f != final and final.startswith(f.rstrip("�").strip()[:20])]
    assert len(growing) >= 1, f"the reply did not stream in: {frames}"  # seen partially before it was complete
    shots(page, "02-first-reply")
    line = speed_lines(page)[0]
    assert re.search(r"[\d.]+ s to first token", line) and "tokens in context" in line and "(constant)" in line
    if DEMO_MODEL.is_dir():  # the model's own reply at the UI's defaults (greedy, 128 new tokens): the first
        # suggestion is a description, which has no accuracy target (the kinds checked below against the truth have)
        assert final.strip() == model_reply(EXAMPLES / "scene-1.png", question, 128)

    follow_up = "How many objects are in the image?"
    ask(page, follow_up, 2)
    lines = speed_lines(page)
    state = [re.search(r"state ([\d.]+ \w+) \(constant\)", s).group(1) for s in lines]
    assert state[0] == state[1]  # the state does not grow with the conversation
    context_tokens = [int(re.search(r"(\d+) tokens in context", s).group(1)) for s in lines]
    assert context_tokens[1] > context_tokens[0]
    if DEMO_MODEL.is_dir():
        assert replies(page)[1].strip() == expected_answer(0, follow_up)
    shots(page, "03-follow-up")

    page.evaluate(OBSERVE_REPLIES)
    page.locator("#regenerate").click()
    page.wait_for_function("() => window.__frames.length > 1")
    wait_for_speed_lines(page, 2)
    assert users(page) == [question, follow_up] and len(replies(page)) == 2
    assert "no prompt re-read" in speed_lines(page)[1]  # regenerate decodes from the saved state
    shots(page, "04-regenerated")

    page.locator("#undo").click()
    page.wait_for_function(f"() => document.querySelectorAll('{USER}').length === 1")
    assert users(page) == [question]
    assert page.input_value("#message textarea") == follow_up  # the undone message is back, to edit or resend
    shots(page, "05-undone")

    page.locator("#clear").click()
    page.wait_for_function(f"() => document.querySelectorAll('{USER}').length === 0")
    assert replies(page) == [] and page.locator("#image-input img").count() > 0  # the image stays
    shots(page, "06-cleared")
    context.close()


def test_edit_a_past_message(browser, app_url, shots):
    context, page = open_page(browser, app_url)
    pick_example(page, 1)
    ask(page, "What is in the image?", 1)
    ask(page, "How many objects are there?", 2)
    first_user = page.locator('#chat [data-testid="user"]').first
    first_user.hover()
    page.locator("#chat .message-buttons-right").first.get_by_label("Edit").click()
    editor = page.locator("#chat textarea").first
    editor.fill("Describe this picture.")
    page.locator("#chat").get_by_role("button", name="Submit").click()
    page.wait_for_function(f"() => document.querySelectorAll('{SPEED}').length === 1 && "
                           f"document.querySelectorAll('{USER}').length === 1")
    assert users(page) == ["Describe this picture."]
    shots(page, "07-edited")
    context.close()


def test_probe_shows_two_probabilities_summing_to_one(browser, app_url, shots):
    context, page = open_page(browser, app_url)
    pick_example(page, 0)
    page.fill("#probe-question textarea", "Is there a blue diamond in the image?")
    page.locator("#probe-button").click()
    page.wait_for_function("() => document.querySelector('#probe-numbers').innerText.includes('P(No)')")
    numbers = dict(re.findall(r"P\((Yes|No)\) = ([\d.]+)", page.locator("#probe-numbers").inner_text()))
    assert set(numbers) == {"Yes", "No"} and abs(float(numbers["Yes"]) + float(numbers["No"]) - 1) < 2e-4
    bars = page.locator("#probe-bars").inner_text()
    percents = [int(p) for p in re.findall(r"(\d+)%", bars)]
    assert "Yes" in bars and "No" in bars and len(percents) == 2 and abs(sum(percents) - 100) <= 1
    if DEMO_MODEL.is_dir():
        assert float(numbers["Yes"]) > 0.5  # the scene has a blue diamond
    shots(page, "08-probe")
    context.close()


def test_corrupt_upload_shows_a_readable_error_and_keeps_the_conversation(browser, app_url, shots):
    context, page = open_page(browser, app_url)
    pick_example(page, 2)
    ask(page, "What is in the image?", 1)
    draft = "Is there a yellow circle in the image?"
    page.fill("#message textarea", draft)
    page.set_input_files("#image-input input[type=file]",
                         files=[{"name": "holiday.png", "mimeType": "image/png",
                                 "buffer": b"\x89PNG\r\n\x1a\n" + b"\x00 definitely not pixels" * 20}])
    page.get_by_text("not an image Cobra can read", exact=False).wait_for()
    toast = page.locator(".toast-body").last.inner_text()
    assert "Please upload a PNG, JPEG, WebP or GIF image." in toast
    assert "Traceback" not in toast and "Exception" not in toast and "Error:" not in toast
    shots(page, "09-corrupt-upload", full_page=False)
    # the example image is shown again, and nothing is lost: the conversation and the unsent message stay
    page.wait_for_function("() => { const i = document.querySelector('#image-input img');"
                           " return i && i.complete && i.naturalWidth === 256; }")
    assert users(page) == ["What is in the image?"] and page.input_value("#message textarea") == draft
    page.locator("#send").click()
    wait_for_speed_lines(page, 2)
    assert users(page) == ["What is in the image?", draft]
    if DEMO_MODEL.is_dir():
        assert replies(page)[1].strip() == "Yes"
    context.close()


def test_two_users_at_once_see_only_their_own_conversation(browser, app_url, shots):
    (ctx_a, a), (ctx_b, b) = open_page(browser, app_url), open_page(browser, app_url)
    pick_example(a, 0)
    pick_example(b, 1)
    qa, qb = "How many objects are in the image?", "How many objects are there?"
    a.fill("#message textarea", qa)
    b.fill("#message textarea", qb)
    a.locator("#send").click()
    b.locator("#send").click()  # both replies are generated at the same time
    wait_for_speed_lines(a, 1)
    wait_for_speed_lines(b, 1)
    assert users(a) == [qa] and users(b) == [qb]
    if DEMO_MODEL.is_dir():
        assert replies(a)[0].strip() == count_answer(0)
        assert replies(b)[0].strip() == count_answer(1)
    follow_a, follow_b = "Is there a blue diamond in the image?", "Is there a blue square in the image?"
    a.fill("#message textarea", follow_a)
    b.fill("#message textarea", follow_b)
    b.locator("#send").click()
    a.locator("#send").click()
    wait_for_speed_lines(a, 2)
    wait_for_speed_lines(b, 2)
    assert users(a) == [qa, follow_a] and users(b) == [qb, follow_b]
    if DEMO_MODEL.is_dir():
        assert replies(a)[1].strip() == expected_answer(0, follow_a)
        assert replies(b)[1].strip() == expected_answer(1, follow_b)
    time.sleep(0.5)
    shots(a, "10-user-a")
    shots(b, "11-user-b")
    closed_before = app_url.log.read_text().count("browser tab gone")
    ctx_a.close()  # the tab goes away: its session is closed on the server
    deadline = time.monotonic() + 30
    while app_url.log.read_text().count("browser tab gone") == closed_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert app_url.log.read_text().count("browser tab gone") == closed_before + 1
    b.locator("#clear").click()  # the other user carries on
    b.wait_for_function(f"() => document.querySelectorAll('{USER}').length === 0")
    ask(b, "How many objects are there?", 1)
    ctx_b.close()


PHONE_ORDER = ["image-input", "chat", "message-row", "reply-buttons", "suggestions", "examples", "probe-panel",
               "params-panel", "model-panel", "speed-help"]  # top to bottom on a narrow page


def boxes(page, ids) -> dict:
    return {i: page.locator(f"#{i}").bounding_box() for i in ids}


def test_on_a_phone_the_conversation_comes_right_after_the_image(browser, app_url, shots):
    """390 px wide (a phone, where many Space visitors are): image, conversation, message box, then the rest. Before,
    the conversation started about 1,300 px down, below the examples, the probe, parameters and model panels."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url)
    page.wait_for_selector("#chat")
    at = boxes(page, PHONE_ORDER)
    tops = [at[i]["y"] for i in PHONE_ORDER]
    assert tops == sorted(tops) and len(set(tops)) == len(tops), at
    assert all(box["x"] >= 0 and box["x"] + box["width"] <= 390 for box in at.values())  # nothing off the screen
    image, chat, message = at["image-input"], at["chat"], at["message-row"]
    assert chat["y"] - (image["y"] + image["height"]) < 40 and message["y"] - (chat["y"] + chat["height"]) < 40
    assert at["reply-buttons"]["height"] < 60  # the four reply buttons on one line
    shots(page, "13-phone-start")
    pick_example(page, 0)
    ask(page, "How many objects are in the image?", 1)
    if DEMO_MODEL.is_dir():
        assert replies(page)[0].strip() == count_answer(0)
    page.locator("#chat").scroll_into_view_if_needed()
    shots(page, "14-phone-reply", full_page=False)
    context.close()


def test_at_no_width_do_the_side_panels_come_between_the_image_and_the_conversation(browser, app_url):
    """Either the two columns side by side or the phone order, on both sides of the page width where they stop
    fitting side by side."""
    context, page = open_page(browser, app_url)
    for width in (600, 800, 816, 820, 822, 823, 824, 826, 830, 840, 1000):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(100)
        at = boxes(page, ["image-input", "chat", "probe-panel"])
        side_by_side = at["chat"]["y"] == at["image-input"]["y"] and at["chat"]["x"] > at["probe-panel"]["x"]
        phone_order = at["image-input"]["y"] < at["chat"]["y"] < at["probe-panel"]["y"]
        assert side_by_side or phone_order, (width, at)
    context.close()


def test_probe_suite_tab_scores_an_uploaded_suite_and_shows_the_report(browser, app_url, shots, tmp_path):
    import json
    import zipfile

    from tests.ui.support import ROOT

    probes = ROOT / "assets" / "probes"
    lines = (probes / "spatial.jsonl").read_text().splitlines()[:24]
    archive = tmp_path / "spatial-small.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("spatial-small.jsonl", "\n".join(lines) + "\n")
        for image in sorted({json.loads(line)["image"] for line in lines}):
            z.write(probes / image, image)
    context, page = open_page(browser, app_url)
    page.get_by_role("tab", name="Probe suite").click()
    page.set_input_files("#suite-files input[type=file]", str(archive))
    page.wait_for_selector("#suite-files >> text=spatial-small.zip")
    page.locator("#suite-run").click()
    page.wait_for_function("() => document.querySelector('#suite-summary').innerText.includes('cases scored')")
    assert "24 cases scored" in page.locator("#suite-summary").inner_text()
    frame = page.frame_locator("#suite-report iframe")
    frame.locator("table").first.wait_for()
    assert "spatial-small" in frame.locator("body").inner_text()
    frame.get_by_text("Metrics per category").first.wait_for()
    page.set_viewport_size({"width": 1400, "height": 1750})  # headless Chromium paints iframes in view only
    page.wait_for_timeout(1500)
    shots(page, "12-probe-suite")
    context.close()


def test_readme_screenshots(browser, app_url, shots, tmp_path):
    """The README's pictures: a short conversation with its speed lines and a probe; the Probe suite tab.
    With COBRA_UPDATE_README_SCREENSHOTS=1 they are also written to docs/screenshots/ (look at them, then commit)."""
    import os

    from tests.ui.support import ROOT

    context, page = open_page(browser, app_url)
    pick_example(page, 1)
    ask(page, "Describe this picture.", 1)
    ask(page, "Is the blue square located below the green circle?", 2)
    page.fill("#probe-question textarea", "Is there a blue triangle in the image?")
    page.locator("#probe-button").click()
    page.wait_for_function("() => document.querySelector('#probe-numbers').innerText.includes('P(No)')")
    page.locator("#model-panel").click()
    page.locator("#model-info").wait_for()
    page.mouse.move(0, 0)
    for close in page.locator(".toast-close").all():
        close.click()
    time.sleep(1.0)
    shots(page, "readme-chat", full_page=True)
    context.close()
    if os.environ.get("COBRA_UPDATE_README_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOTS / "readme-chat.png", target / "chat.png")
        shutil.copyfile(SCREENSHOTS / "12-probe-suite.png", target / "probe-suite.png")
