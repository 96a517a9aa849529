"""`maestro-xl demo`: the listening page, a Gradio app over a `Studio`.

Upload a MIDI primer, pick a validation piece or start from nothing; choose the composer and the sampling settings;
press Generate. The piano roll grows as the music is written, then the page plays the WAV and offers the MIDI. A bad
upload or setting is a message in the page, and the app goes on serving; requests are queued one at a time, so a
second visitor waits rather than being dropped. The page binds 127.0.0.1 unless asked, and never makes a share link.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from pipeline.composers import ANY
from pipeline.demo import RANGES
from pipeline.demo.studio import Request, Studio, Take
from pipeline.errors import PipelineError
from pipeline.music.pianoroll import roll_image
from pipeline.params import DemoParams

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it reads it then
NO_PRIMER = "no primer: start from nothing"
UPLOADED = "the uploaded file"
LOOPBACK = "127.0.0.1"


def generate_take(studio: Studio, request: Request) -> Iterator[tuple[str, object]]:
    """Run one request in a thread and yield what the page shows meanwhile: ('progress', (share, notes, primer
    end)) as the music is written, the latest only, then ('take', Take) or ('error', message)."""
    updates: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            updates.put(("take", studio.compose(request, lambda *drawn: updates.put(("progress", drawn)))))
        except PipelineError as exc:
            updates.put(("error", str(exc)))
        except Exception as exc:  # noqa: BLE001 (the page must keep serving; say what broke in one line)
            updates.put(("error", f"generation failed: {type(exc).__name__}: {exc}"))

    threading.Thread(target=work, daemon=True).start()
    while True:
        kind, value = updates.get()
        while kind == "progress" and not updates.empty():  # drawing every update would fall behind the sampling
            kind, value = updates.get()
        yield kind, value
        if kind != "progress":
            return


def composing(share: float, seconds: float) -> str:
    """The status while a take is written: a bar of 24 cells, the share and the seconds done."""
    done = round(24 * share)
    return f"composing `{'█' * done}{'░' * (24 - done)}` {share:.0%}, {share * seconds:.0f} of {seconds:.0f} s"


def summary(take: Take) -> str:
    """The take's record as the page shows it."""
    r = take.record
    opening = f"after {take.primer_seconds:.1f} s of primer" if take.primer_seconds else "from nothing"
    who = f" as {r['composer']}" if r.get("composer") else ""
    flags = ", ".join(r["flags"]) if r["flags"] else "none"
    return (
        f"Take {r['take']}: **{r['seconds']:.1f} s{who}** {opening}: {r['notes']} notes, {r['tokens']} tokens, "
        f"seed {r['seed']}, ended by {r['ended_by']}. Flags: **{flags}**."
    )


def build(studio: Studio) -> object:
    """The page's gradio Blocks."""
    import gradio as gr

    pieces = studio.pieces()
    sources = [NO_PRIMER, UPLOADED, *pieces]
    with gr.Blocks(title="maestro-xl", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("# maestro-xl\nA Transformer-XL trained on MAESTRO's piano performances. Give it a few bars, or "
                    "nothing, pick a composer, and listen.")  # fmt: skip
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="primer (MIDI)", file_types=[".mid", ".midi"], type="filepath", elem_id="upload")
                source = gr.Dropdown(sources, value=NO_PRIMER, label="start from", elem_id="source")
                primer_seconds = gr.Slider(*RANGES["primer_seconds"], value=studio.settings.primer_seconds, step=1,
                                           label="seconds of the primer")  # fmt: skip
            with gr.Column():
                composer = gr.Dropdown(studio.composers(), value=ANY, label="composer", elem_id="composer")
                guidance = gr.Slider(*RANGES["guidance"], value=studio.settings.guidance, step=0.25,
                                     label="guidance (1: plain)")  # fmt: skip
                length = gr.Slider(1, studio.limits.max_seconds, value=studio.limits.seconds, step=1,
                                   label="seconds to generate")  # fmt: skip
                temperature = gr.Slider(*RANGES["temperature"], value=studio.settings.temperature, step=0.05,
                                        label="temperature")  # fmt: skip
                top_p = gr.Slider(*RANGES["top_p"], value=studio.settings.top_p, step=0.01, label="top-p")
                seed = gr.Number(value=studio.settings.seed, precision=0, label="seed")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status")
        roll = gr.Image(type="numpy", format="png", interactive=False, show_label=False, buttons=["download"],
                        elem_id="roll")  # fmt: skip
        with gr.Row():
            audio = gr.Audio(label="listen", type="filepath", interactive=False, buttons=["download"], elem_id="audio")
            midi = gr.File(label="MIDI", interactive=False, buttons=[], elem_id="midi")
        upload.upload(lambda: gr.update(value=UPLOADED), outputs=source)

        def run(file, start, cut, who, scale, secs, temp, nucleus, seed_value, progress=gr.Progress()):  # noqa: ANN001, ANN202, B008, PLR0913
            if start == UPLOADED and not file:
                yield "⚠ upload a MIDI file first, or pick another start", None, None, None
                return
            request = Request(
                upload=Path(file) if start == UPLOADED else None, piece=pieces.get(start), primer_seconds=cut,
                composer=who, guidance=scale, seconds=secs, temperature=temp, top_p=nucleus, seed=int(seed_value or 0),
            )  # fmt: skip
            yield composing(0.0, secs), None, None, None
            for kind, value in generate_take(studio, request):
                if kind == "progress":
                    share, notes, primer_end = value
                    progress(share, desc="composing")
                    yield composing(share, secs), roll_image(notes, primer_end + secs, primer_end), None, None
                elif kind == "error":
                    yield f"⚠ {value}", None, None, None
                else:
                    yield summary(value), str(value.png), str(value.wav) if value.wav else None, str(value.midi)

        inputs = [upload, source, primer_seconds, composer, guidance, length, temperature, top_p, seed]
        button.click(run, inputs, [status, roll, audio, midi], concurrency_limit=1, api_name="generate")
    page.queue(default_concurrency_limit=1)
    return page


def start(model: Path, tokens: Path, params: Path, host: str, port: int | None) -> None:
    """Load the model and the demo: and generate: settings of `params` (when the file exists; then both sections
    must be there), then serve the page; a missing model, Gradio or port is a PipelineError."""
    from pipeline.params import GenerateParams, load_section, typed

    found = {name: load_section(name, params) if Path(params).is_file() else {} for name in ("demo", "generate")}
    demo = DemoParams(**typed(DemoParams, found["demo"], "demo"))
    studio = Studio(model, tokens, GenerateParams(**typed(GenerateParams, found["generate"], "generate")), demo)
    try:
        try:
            import gradio  # noqa: F401
        except ImportError as exc:
            raise PipelineError("the demo needs Gradio: pip install -e '.[demo]' (make setup installs it)") from exc
        serve(studio, host, port, demo)
    finally:
        studio.close()


def serve(studio: Studio, host: str, port: int | None, demo: DemoParams) -> None:
    """Serve the page on host:port (a free port from 7860 when None) until interrupted; never a share link."""
    import gradio as gr

    page = build(studio)
    if host != LOOPBACK:
        print(f"demo: listening on {host}: anyone who can reach this machine can use the page", flush=True)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no fonts fetched
    try:
        _, url, _ = page.launch(
            server_name=host,
            server_port=port,
            share=False,
            max_file_size=int(demo.max_upload_mb * 2**20),
            ssr_mode=False,
            footer_links=[],
            theme=theme,
            quiet=True,
            prevent_thread_lock=True,
        )
    except OSError as exc:  # a port in use, an address this machine does not have
        raise PipelineError(f"demo: cannot listen on {host}:{port or 'a port from 7860'} ({exc})") from exc
    print(f"demo: serving {url} (Ctrl+C stops it)", flush=True)
    page.block_thread()
