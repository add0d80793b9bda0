"""The Gradio page: one function per panel (returning its components), then the events that wire them to
`handlers.ChatHandlers`, where all logic lives.

Public API (gradio_client; see the README): /chat, /regenerate, /edit, /undo, /clear, /stop, /set_image, /probe,
/model_info, /run_suite. The session id lives in a server-side `gr.State` per browser tab or API client. The sampling
parameters reach the events as keyword inputs named after `ParamValues`' fields, which are therefore the endpoints'
parameter names.
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from cobra_app.serving.spaces import gpu
from cobra_app.ui.examples import Example, Suggestions
from cobra_app.ui.handlers import ChatHandlers, Notifier, image_path
from cobra_app.ui.params import DEFAULT_PARAMS, ParamValues

TITLE = "Cobra Chat"
INTRO = ("Chat about an image with **Cobra**, a vision-language model built on **Mamba**. Mamba carries the whole "
         "conversation in a fixed-size state, so a follow-up question costs only its own new tokens: watch the "
         "speed line under each reply.")
SIDE_MIN_WIDTH, CONVERSATION_MIN_WIDTH = 320, 420  # px
NARROW_PAGE = 823  # px: below 824 the page (32 px padding a side) is too narrow for both columns and their 20 px gap
CSS = """
.banner { border: 1px solid #d97706; background: #fffbeb; color: #78350f; border-radius: 8px; padding: 4px 14px; }
.banner p { margin: 6px 0; }
#speed-help { font-size: 0.85em; opacity: 0.8; }
#probe-numbers { font-variant-numeric: tabular-nums; }
#model-info thead { display: none; }
#reply-buttons { flex-wrap: nowrap; }
#reply-buttons > button { min-width: 0; flex: 1 1 auto; white-space: nowrap; }
#chat-row { flex-wrap: nowrap; }
""" + f"""
/* a narrow page (a phone): one column in the order of use, image, conversation, message box and then the rest; the
   columns never wrap on their own, which would put the side column's panels above the conversation */
@media (max-width: {NARROW_PAGE}px) {{
  #chat-row {{ flex-direction: column; }}
  #side-column, #conversation-column {{ display: contents; }}
  #image-input {{ order: 1; }}
  #chat {{ order: 2; }}
  #message-row {{ order: 3; }}
  #reply-buttons {{ order: 4; }}
  #suggestions {{ order: 5; }}
  #examples {{ order: 6; }}
  #probe-panel {{ order: 7; }}
  #params-panel {{ order: 8; }}
  #model-panel {{ order: 9; }}
  #speed-help {{ order: 10; }}
}}
"""
THEME = gr.themes.Soft(primary_hue="emerald", secondary_hue="sky")
CHEAP_EVENTS = {"concurrency_limit": None}  # bookkeeping: never waits behind replies


class GradioNotifier(Notifier):
    def warning(self, message: str) -> None:
        super().warning(message)
        gr.Warning(message, duration=8)

    def info(self, message: str) -> None:
        super().info(message)
        gr.Info(message, duration=5)


def _browser_id(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


# --- panels -----------------------------------------------------------------------------------------------------------
@dataclass
class ConversationPanel:
    chat: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    undo: gr.Button
    clear: gr.Button
    suggestions: gr.Dataset


@dataclass
class ProbePanel:
    question: gr.Textbox
    button: gr.Button
    bars: gr.Label
    numbers: gr.Markdown


@dataclass
class SuitePanel:
    files: gr.File
    run: gr.Button
    summary: gr.Markdown
    download: gr.File
    report: gr.HTML


def image_panel(examples: list[Example]) -> gr.Image:
    """The image input, with the example gallery under it."""
    # events reading the image use preprocess=False: Gradio's preprocessing would decode the upload (and fail with a
    # bare "Error" on a corrupt file); it still checks and caches the file first
    image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard", "webcam"], height=300,
                     elem_id="image-input")
    if examples:
        gr.Examples([[str(e.image)] for e in examples], inputs=[image], label="Example images", examples_per_page=8,
                    elem_id="examples")
    return image


def probe_panel() -> ProbePanel:
    with gr.Accordion("Yes/No probe", open=True, elem_id="probe-panel"):
        gr.Markdown("P(Yes) and P(No) for a question about the current image, read from the model's first answer "
                    "token (the paper's closed-set protocol).")
        with gr.Row():
            question = gr.Textbox(show_label=False, placeholder="Is there a red circle in the image?", scale=4,
                                  elem_id="probe-question")
            button = gr.Button("Probe", scale=1, elem_id="probe-button")
        bars = gr.Label(label="Answer probabilities", num_top_classes=2, elem_id="probe-bars")
        numbers = gr.Markdown(elem_id="probe-numbers")
    return ProbePanel(question, button, bars, numbers)


def params_panel(max_new_tokens: int) -> dict[str, gr.components.Component]:
    """The sampling parameters, keyed by `ParamValues`' field names (the events' keyword inputs)."""
    start = DEFAULT_PARAMS
    with gr.Accordion("Parameters", open=False, elem_id="params-panel"):
        greedy = gr.Checkbox(start.greedy, label="Greedy (deterministic; the sampling settings below are ignored)")
        inputs = {
            "max_new_tokens": gr.Slider(1, max_new_tokens, value=min(start.max_new_tokens, max_new_tokens), step=1,
                                        label="Max new tokens", elem_id="max-new-tokens"),
            "temperature": gr.Slider(0.05, 2.0, value=start.temperature, step=0.05, label="Temperature"),
            "top_p": gr.Slider(0.05, 1.0, value=start.top_p, step=0.01, label="Top-p (1 = off)"),
            "top_k": gr.Slider(0, 200, value=start.top_k, step=1, label="Top-k (0 = off)"),
            "repetition_penalty": gr.Slider(0.8, 2.0, value=start.repetition_penalty, step=0.05,
                                            label="Repetition penalty (1 = off)"),
            "greedy": greedy,
        }
    return inputs


def model_panel(model_info_md: str) -> gr.Markdown:
    with gr.Accordion("Model", open=False, elem_id="model-panel"):
        return gr.Markdown(model_info_md, elem_id="model-info")


def conversation_panel(suggest: Suggestions) -> ConversationPanel:
    """The chat, the message box with Send, the reply buttons and the suggested questions."""
    chat = gr.Chatbot(label="Conversation", height=520, editable="user", elem_id="chat", buttons=["copy", "copy_all"],
                      feedback_options=None, placeholder="**Pick an example** or add an image, then ask about it.")
    with gr.Row(elem_id="message-row"):
        message = gr.Textbox(show_label=False, placeholder="Ask about the image…", scale=5, autofocus=True,
                             elem_id="message", max_lines=6)
        send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
    with gr.Row(elem_id="reply-buttons"):
        stop = gr.Button("■ Stop", size="sm", elem_id="stop")
        regenerate = gr.Button("↻ Regenerate", size="sm", elem_id="regenerate")
        undo = gr.Button("↶ Undo", size="sm", elem_id="undo")
        clear = gr.Button("✕ Clear", size="sm", elem_id="clear")
    suggestions = gr.Dataset(components=[message], samples=[[q] for q in suggest.for_image(None)],
                             label="Suggested questions (click one, then Send)", samples_per_page=10,
                             elem_id="suggestions")
    gr.Markdown("Under each reply: time to first token, decoding speed, the prompt tokens this turn read (a "
                "follow-up reads only its own), tokens in context, and the size of the conversation state, which "
                "stays the same however long the chat gets.", elem_id="speed-help")
    return ConversationPanel(chat, message, send, stop, regenerate, undo, clear, suggestions)


def suite_panel(max_cases: int) -> SuitePanel:
    gr.Markdown("Score a whole probe suite (closed-set Yes/No or True/False cases) and read the report. Upload the "
                "suite's `.jsonl` together with its images, or one `.zip` holding both. "
                f"At most {max_cases} cases; the format is described in `cobra_app/probe/suite.py`.")
    files = gr.File(label="Suite (.jsonl + images, or .zip)", file_count="multiple",
                    file_types=[".jsonl", ".json", ".zip", "image"], elem_id="suite-files")
    run = gr.Button("Run suite", variant="primary", elem_id="suite-run")
    summary = gr.Markdown(elem_id="suite-summary")
    download = gr.File(label="Report (HTML)", interactive=False, elem_id="suite-report-file")
    report = gr.HTML(elem_id="suite-report")
    return SuitePanel(files, run, summary, download, report)


# --- events -----------------------------------------------------------------------------------------------------------
def forget_closed_tab(demo: gr.Blocks, browser_id: str | None) -> None:
    """Drop Gradio's record of a tab that is gone. Gradio keeps a copy of the page's component settings per session,
    about 90 kB here, for its last `state_session_capacity` (10,000) sessions, closed ones included, so that a tab
    can reconnect within the hour; ours has nothing to come back to (its conversation is closed on unload), and those
    copies kept up to 0.9 GB that no closed session gives back."""
    holder = demo.state_holder
    with holder.lock:
        holder.session_data.pop(browser_id, None)
        holder.time_last_used.pop(browser_id, None)


def wire_session(demo: gr.Blocks, handlers: ChatHandlers, sid: gr.State) -> None:
    """A session per tab, opened on page load and closed on unload."""

    def on_load(request: gr.Request):
        return handlers.open_tab(_browser_id(request))

    def on_unload(request: gr.Request):
        handlers.close_browser(_browser_id(request))
        forget_closed_tab(demo, _browser_id(request))

    demo.load(on_load, outputs=[sid], api_visibility="private", **CHEAP_EVENTS)
    demo.unload(on_unload)


def model_events(concurrency: int) -> dict:
    """Event settings of everything that runs the model: one shared pool of `concurrency` slots."""
    return {"concurrency_id": "model", "concurrency_limit": concurrency}


def wire_image(handlers: ChatHandlers, sid: gr.State, image: gr.Image, talk: ConversationPanel,
               suggest: Suggestions, model: dict) -> None:
    """An image change starts a new conversation (a refused file is replaced by the previous image) and brings its
    suggested questions; a suggestion clicked goes into the message box."""

    def on_image(image, sid_value, request: gr.Request):
        image = image_path(image)
        sid_value, messages, shown = handlers.set_image(image, sid_value, _browser_id(request))
        questions = gr.Dataset(samples=[[q] for q in suggest.for_image(shown)])
        return sid_value, messages, gr.skip() if shown == image else shown, questions

    image.change(on_image, [image, sid], [sid, talk.chat, image, talk.suggestions], api_name="set_image",
                 show_progress="minimal", preprocess=False, **model)
    talk.suggestions.click(lambda sample: sample[0], [talk.suggestions], [talk.message], api_visibility="private",
                           **CHEAP_EVENTS)


def wire_replies(handlers: ChatHandlers, sid: gr.State, image: gr.Image, talk: ConversationPanel,
                 params: dict[str, gr.components.Component], model: dict) -> None:
    """Sending, regenerating and editing: the events that stream a reply, with the sampling parameters."""

    def on_send(image, message, sid_value, request: gr.Request, **values):
        yield from handlers.send(image_path(image), message, sid_value, ParamValues(**values),
                                 browser_id=_browser_id(request))

    send = dict(fn=on_send, inputs=[image, talk.message, sid], inputs_kwargs=params,
                outputs=[sid, talk.chat, talk.message], show_progress="minimal", trigger_mode="once",
                preprocess=False, **model)
    talk.send.click(api_name="chat", **send)
    talk.message.submit(api_visibility="private", **send)

    def on_regenerate(sid_value, request: gr.Request, **values):
        yield from handlers.regenerate(sid_value, ParamValues(**values), browser_id=_browser_id(request))

    regenerate = dict(fn=on_regenerate, inputs=[sid], inputs_kwargs=params, outputs=[sid, talk.chat],
                      show_progress="minimal", **model)
    talk.regenerate.click(api_name="regenerate", trigger_mode="once", **regenerate)
    talk.chat.retry(api_visibility="private", **regenerate)

    def on_edit(sid_value, edit: gr.EditData, request: gr.Request, **values):
        index = edit.index if isinstance(edit.index, int) else edit.index[0]
        yield from handlers.edit(index, edit.value, sid_value, ParamValues(**values), browser_id=_browser_id(request))

    talk.chat.edit(on_edit, [sid], [sid, talk.chat], inputs_kwargs=params, api_visibility="private",
                   show_progress="minimal", **model)

    def api_edit(turn, message, sid_value, request: gr.Request, **values):
        yield from handlers.edit_turn(turn, message, sid_value, ParamValues(**values), browser_id=_browser_id(request))

    # /edit for API clients: replace user message `turn` (0-based) and reply anew
    edit_turn = gr.Number(visible=False, precision=0, label="turn")
    edit_text = gr.Textbox(visible=False, label="message")
    gr.Button(visible=False).click(api_edit, [edit_turn, edit_text, sid], [sid, talk.chat], inputs_kwargs=params,
                                   api_name="edit", **model)


def wire_controls(handlers: ChatHandlers, sid: gr.State, talk: ConversationPanel) -> None:
    """Stop, Undo and Clear: bookkeeping that never waits behind replies."""
    talk.stop.click(handlers.stop, [sid], None, api_name="stop", show_progress="hidden", **CHEAP_EVENTS)

    def on_undo(sid_value, message, request: gr.Request):
        return handlers.undo(sid_value, message, _browser_id(request))

    undo = dict(fn=on_undo, inputs=[sid, talk.message], outputs=[sid, talk.chat, talk.message],
                show_progress="hidden", **CHEAP_EVENTS)
    talk.undo.click(api_name="undo", **undo)
    talk.chat.undo(api_visibility="private", **undo)

    def on_clear(sid_value, request: gr.Request):
        return handlers.clear(sid_value, _browser_id(request))

    clear = dict(fn=on_clear, inputs=[sid], outputs=[sid, talk.chat], show_progress="hidden", **CHEAP_EVENTS)
    talk.clear.click(api_name="clear", **clear)
    talk.chat.clear(api_visibility="private", **clear)


def wire_probe(handlers: ChatHandlers, sid: gr.State, image: gr.Image, probe: ProbePanel, model: dict) -> None:
    def on_probe(image, question, sid_value, request: gr.Request):
        return handlers.probe(image_path(image), question, sid_value, _browser_id(request))

    run = dict(fn=on_probe, inputs=[image, probe.question, sid], outputs=[sid, probe.bars, probe.numbers],
               show_progress="minimal", preprocess=False, **model)
    probe.button.click(api_name="probe", **run)
    probe.question.submit(api_visibility="private", **run)


def wire_suite(handlers: ChatHandlers, suite: SuitePanel, out_root: Path, max_cases: int, model: dict) -> None:
    @gpu(duration=300)
    def on_suite(files, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
        paths = [getattr(f, "name", f) for f in files or []]
        result = handlers.run_suite(paths, out_root, max_cases,
                                    progress=lambda done, total: progress((done, total), unit="cases"))
        if result is None:
            return "", None, ""
        frame = (f'<iframe title="Probe report" srcdoc="{html.escape(result.report_html, quote=True)}" '
                 'style="width:100%;height:900px;border:1px solid #ddd;border-radius:8px;" sandbox="allow-scripts">'
                 '</iframe>')
        return result.summary, str(result.report_path), frame

    suite.run.click(on_suite, [suite.files], [suite.summary, suite.download, suite.report], api_name="run_suite",
                    **model)


# --- the page ---------------------------------------------------------------------------------------------------------
def build_demo(handlers: ChatHandlers, *, model_info_md: str | Callable[[], str], banner_md: str = "",
               examples: list[Example] = (), concurrency: int = 4, max_new_tokens: int = 512,
               suite_max_cases: int = 1000, suite_out: Path | None = None) -> gr.Blocks:
    """The app: the Chat tab (image, probe, parameters and model panels beside the conversation) and the Probe suite
    tab. `concurrency`: model events (replies, probes, image encodings, suites) in progress at once. `model_info_md`
    may be a function: the model panel then reads it again at every page load (the ops path changes once the CPU
    kernels built in the background are ready)."""
    model_info = model_info_md if callable(model_info_md) else lambda: model_info_md
    suite_out = suite_out or Path(tempfile.gettempdir()) / "cobra-chat-probe"
    suggest = Suggestions(list(examples))
    with gr.Blocks(title=TITLE, fill_width=True) as demo:
        sid = gr.State(None, delete_callback=handlers.close)
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        gr.Markdown(banner_md, visible=bool(banner_md), elem_classes=["banner"], elem_id="fallback-banner")
        with gr.Tab("Chat", id="chat"), gr.Row(equal_height=False, elem_id="chat-row"):
            with gr.Column(scale=2, min_width=SIDE_MIN_WIDTH, elem_id="side-column"):
                image = image_panel(list(examples))
                probe = probe_panel()
                params = params_panel(max_new_tokens)
                info_md = model_panel(model_info())
            with gr.Column(scale=3, min_width=CONVERSATION_MIN_WIDTH, elem_id="conversation-column"):
                talk = conversation_panel(suggest)
        with gr.Tab("Probe suite", id="suite"):
            suite = suite_panel(suite_max_cases)

        model = model_events(concurrency)
        wire_session(demo, handlers, sid)
        wire_image(handlers, sid, image, talk, suggest, model)
        wire_replies(handlers, sid, image, talk, params, model)
        wire_controls(handlers, sid, talk)
        wire_probe(handlers, sid, image, probe, model)
        gr.Button(visible=False).click(model_info, None, info_md, api_name="model_info", **CHEAP_EVENTS)
        demo.load(model_info, None, info_md, api_visibility="private", **CHEAP_EVENTS)
        wire_suite(handlers, suite, suite_out, suite_max_cases, model)
    return demo
