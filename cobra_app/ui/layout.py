"""The Gradio page: components, their events and the public API names. All logic lives in `handlers.ChatHandlers`.

Public API (gradio_client; see the README): /chat, /regenerate, /edit, /undo, /clear, /stop, /set_image, /probe,
/model_info, /run_suite. The session id lives in a server-side `gr.State` per browser tab or API client.
"""

from __future__ import annotations

import html
import logging
import tempfile
from pathlib import Path

import gradio as gr

from cobra_app.ui.examples import Example, Suggestions
from cobra_app.ui.handlers import ChatHandlers, Notifier, image_path
from cobra_app.ui.probe_suite import SuiteUploadError, run_uploaded_suite
from cobra_app.ui.spaces import gpu

log = logging.getLogger(__name__)

TITLE = "Cobra Chat"
INTRO = ("Chat about an image with **Cobra**, a vision-language model built on **Mamba**. Mamba carries the whole "
         "conversation in a fixed-size state, so a follow-up question costs only its own new tokens: watch the "
         "speed line under each reply.")
CSS = """
.banner { border: 1px solid #d97706; background: #fffbeb; color: #78350f; border-radius: 8px; padding: 4px 14px; }
.banner p { margin: 6px 0; }
#speed-help { font-size: 0.85em; opacity: 0.8; }
#probe-numbers { font-variant-numeric: tabular-nums; }
#model-info thead { display: none; }
"""
THEME = gr.themes.Soft(primary_hue="emerald", secondary_hue="sky")


class GradioNotifier(Notifier):
    def warning(self, message: str) -> None:
        super().warning(message)
        gr.Warning(message, duration=8)

    def info(self, message: str) -> None:
        super().info(message)
        gr.Info(message, duration=5)


def _browser_id(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def build_demo(handlers: ChatHandlers, *, model_info_md: str, banner_md: str = "", examples: list[Example] = (),
               cobra=None, concurrency: int = 4, max_new_tokens: int = 512, suite_max_cases: int = 1000,
               suite_out: Path | None = None) -> gr.Blocks:
    """The app. `handlers` does the work; `cobra` (optional) enables the Probe suite tab."""
    suite_out = suite_out or Path(tempfile.gettempdir()) / "cobra-chat-probe"
    model = {"concurrency_id": "model", "concurrency_limit": concurrency}  # events that run the model
    cheap = {"concurrency_limit": None}  # bookkeeping: never waits behind replies
    suggest = Suggestions(list(examples))

    with gr.Blocks(title=TITLE, fill_width=True) as demo:
        sid = gr.State(None, delete_callback=handlers.close)
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        gr.Markdown(banner_md, visible=bool(banner_md), elem_classes=["banner"], elem_id="fallback-banner")

        with gr.Tab("Chat", id="chat"), gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                # events reading the image use preprocess=False: Gradio's preprocessing would decode the upload
                # (and fail with a bare "Error" on a corrupt file); it still checks and caches the file first
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard", "webcam"],
                                 height=300, elem_id="image-input")
                if examples:
                    gr.Examples([[str(e.image)] for e in examples], inputs=[image], label="Example images",
                                examples_per_page=8, elem_id="examples")
                with gr.Accordion("Yes/No probe", open=True, elem_id="probe-panel"):
                    gr.Markdown("P(Yes) and P(No) for a question about the current image, read from the model's "
                                "first answer token (the paper's closed-set protocol).")
                    with gr.Row():
                        probe_q = gr.Textbox(show_label=False, placeholder="Is there a red circle in the image?",
                                             scale=4, elem_id="probe-question")
                        probe_btn = gr.Button("Probe", scale=1, elem_id="probe-button")
                    probe_bars = gr.Label(label="Answer probabilities", num_top_classes=2, elem_id="probe-bars")
                    probe_text = gr.Markdown(elem_id="probe-numbers")
                with gr.Accordion("Parameters", open=False, elem_id="params-panel"):
                    greedy_box = gr.Checkbox(True, label="Greedy (deterministic; the sampling settings below are "
                                                     "ignored)")
                    max_tokens_slider = gr.Slider(1, max_new_tokens, value=min(128, max_new_tokens), step=1,
                                           label="Max new tokens")
                    temperature_slider = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
                    top_p_slider = gr.Slider(0.05, 1.0, value=1.0, step=0.01, label="Top-p (1 = off)")
                    top_k_slider = gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)")
                    repetition_slider = gr.Slider(0.8, 2.0, value=1.0, step=0.05,
                                                  label="Repetition penalty (1 = off)")
                with gr.Accordion("Model", open=False, elem_id="model-panel"):
                    info_md = gr.Markdown(model_info_md, elem_id="model-info")
            with gr.Column(scale=3, min_width=420):
                chat = gr.Chatbot(label="Conversation", height=520, editable="user", elem_id="chat",
                                  buttons=["copy", "copy_all"], feedback_options=None,
                                  placeholder="**Pick an example** or add an image, then ask about it.")
                with gr.Row():
                    message = gr.Textbox(show_label=False, placeholder="Ask about the image…", scale=5,
                                         autofocus=True, elem_id="message", max_lines=6)
                    send_btn = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                with gr.Row():
                    stop_btn = gr.Button("■ Stop", size="sm", elem_id="stop")
                    regen_btn = gr.Button("↻ Regenerate", size="sm", elem_id="regenerate")
                    undo_btn = gr.Button("↶ Undo", size="sm", elem_id="undo")
                    clear_btn = gr.Button("✕ Clear", size="sm", elem_id="clear")
                suggestions = gr.Dataset(components=[message], samples=[[q] for q in suggest.for_image(None)],
                                         label="Suggested questions (click one, then Send)", samples_per_page=10,
                                         elem_id="suggestions")
                gr.Markdown("Under each reply: time to first token, decoding speed, the prompt tokens this "
                            "turn read (a follow-up reads only its own), tokens in context, and the size of "
                            "the conversation state, which stays the same however long the chat gets.",
                            elem_id="speed-help")

        with gr.Tab("Probe suite", id="suite", visible=cobra is not None):
            gr.Markdown("Score a whole probe suite (closed-set Yes/No or True/False cases) and read the report. "
                        "Upload the suite's `.jsonl` together with its images, or one `.zip` holding both. "
                        f"At most {suite_max_cases} cases; the format is described in `cobra_app/probe/suite.py`.")
            suite_files = gr.File(label="Suite (.jsonl + images, or .zip)", file_count="multiple",
                                  file_types=[".jsonl", ".json", ".zip", "image"], elem_id="suite-files")
            suite_btn = gr.Button("Run suite", variant="primary", elem_id="suite-run")
            suite_summary = gr.Markdown(elem_id="suite-summary")
            suite_download = gr.File(label="Report (HTML)", interactive=False, elem_id="suite-report-file")
            suite_report = gr.HTML(elem_id="suite-report")

        # --- events -------------------------------------------------------------------------------------------------
        params = [max_tokens_slider, temperature_slider, top_p_slider, top_k_slider, repetition_slider, greedy_box]

        def on_load(request: gr.Request):
            return handlers.open_tab(_browser_id(request))

        def on_unload(request: gr.Request):
            handlers.close_browser(_browser_id(request))

        demo.load(on_load, outputs=[sid], api_visibility="private", **cheap)
        demo.unload(on_unload)

        def on_image(image, sid_value, request: gr.Request):
            image = image_path(image)
            sid_value, messages, shown = handlers.set_image(image, sid_value, _browser_id(request))
            questions = gr.Dataset(samples=[[q] for q in suggest.for_image(shown)])
            return sid_value, messages, gr.skip() if shown == image else shown, questions

        image.change(gpu(on_image), [image, sid], [sid, chat, image, suggestions], api_name="set_image",
                     show_progress="minimal", preprocess=False, **model)
        suggestions.click(lambda sample: sample[0], [suggestions], [message], api_visibility="private", **cheap)

        @gpu
        def on_send(image, message, sid_value, max_new_tokens, temperature, top_p, top_k,
                    repetition_penalty, greedy, request: gr.Request):
            values = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy)
            yield from handlers.send(image_path(image), message, sid_value, *values, browser_id=_browser_id(request))

        send_args = dict(fn=on_send, inputs=[image, message, sid, *params], outputs=[sid, chat, message],
                         show_progress="minimal", trigger_mode="once", preprocess=False, **model)
        send_btn.click(api_name="chat", **send_args)
        message.submit(api_visibility="private", **send_args)

        @gpu
        def on_regenerate(sid_value, max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy,
                          request: gr.Request):
            values = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy)
            yield from handlers.regenerate(sid_value, *values, browser_id=_browser_id(request))

        regen_btn.click(on_regenerate, [sid, *params], [sid, chat], api_name="regenerate", show_progress="minimal",
                        trigger_mode="once", **model)
        chat.retry(on_regenerate, [sid, *params], [sid, chat], api_visibility="private", show_progress="minimal",
                   **model)

        @gpu
        def on_edit(sid_value, max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy,
                    edit: gr.EditData, request: gr.Request):
            values = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy)
            index = edit.index if isinstance(edit.index, int) else edit.index[0]
            yield from handlers.edit(index, edit.value, sid_value, *values, browser_id=_browser_id(request))

        chat.edit(on_edit, [sid, *params], [sid, chat], api_visibility="private", show_progress="minimal", **model)

        @gpu
        def api_edit(turn, message, sid_value, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                     greedy, request: gr.Request):
            values = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy)
            yield from handlers.edit_turn(turn, message, sid_value, *values, browser_id=_browser_id(request))

        # /edit for API clients: replace user message `turn` (0-based) and reply anew
        edit_turn = gr.Number(visible=False, precision=0, label="turn")
        edit_text = gr.Textbox(visible=False, label="message")
        gr.Button(visible=False).click(api_edit, [edit_turn, edit_text, sid, *params], [sid, chat], api_name="edit",
                                       **model)

        def on_stop(sid_value):
            handlers.stop(sid_value)

        stop_btn.click(on_stop, [sid], None, api_name="stop", show_progress="hidden", **cheap)

        def on_undo(sid_value, message, request: gr.Request):
            return handlers.undo(sid_value, message, _browser_id(request))

        undo_btn.click(on_undo, [sid, message], [sid, chat, message], api_name="undo", show_progress="hidden",
                       **cheap)
        chat.undo(on_undo, [sid, message], [sid, chat, message], api_visibility="private", show_progress="hidden",
                  **cheap)

        def on_clear(sid_value, request: gr.Request):
            return handlers.clear(sid_value, _browser_id(request))

        clear_btn.click(on_clear, [sid], [sid, chat], api_name="clear", show_progress="hidden", **cheap)
        chat.clear(on_clear, [sid], [sid, chat], api_visibility="private", show_progress="hidden", **cheap)

        @gpu
        def on_probe(image, question, sid_value, request: gr.Request):
            return handlers.probe(image_path(image), question, sid_value, _browser_id(request))

        probe_args = dict(fn=on_probe, inputs=[image, probe_q, sid], outputs=[sid, probe_bars, probe_text],
                          show_progress="minimal", preprocess=False, **model)
        probe_btn.click(api_name="probe", **probe_args)
        probe_q.submit(api_visibility="private", **probe_args)

        def on_info():
            return model_info_md

        gr.Button(visible=False).click(on_info, None, info_md, api_name="model_info", **cheap)

        if cobra is not None:
            @gpu(duration=300)
            def on_suite(files, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
                paths = [getattr(f, "name", f) for f in files or []]
                try:
                    result = run_uploaded_suite(
                        cobra, paths, suite_out, image_limits=handlers.image_limits, max_cases=suite_max_cases,
                        progress=lambda done, total: progress((done, total), unit="cases"))
                except SuiteUploadError as exc:
                    handlers.notify.warning(exc.user_message)
                    return "", None, ""
                except Exception:
                    log.exception("probe suite failed")
                    handlers.notify.warning("The suite could not be scored (a model error). Please try again.")
                    return "", None, ""
                frame = (f'<iframe title="Probe report" srcdoc="{html.escape(result.report_html, quote=True)}" '
                         'style="width:100%;height:900px;border:1px solid #ddd;border-radius:8px;" '
                         'sandbox="allow-scripts"></iframe>')
                return result.summary, str(result.report_path), frame

            suite_btn.click(on_suite, [suite_files], [suite_summary, suite_download, suite_report],
                            api_name="run_suite", **model)

    return demo
