"""``python -m fgad.runtime.liveview --demo``: the live view with synthetic frames from two sources."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .server import LiveView
from .settings import ViewSettings, load_persisted_threshold, parse_serve_address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fgad.runtime.liveview", description=__doc__)
    parser.add_argument("--demo", action="store_true", help="publish synthetic frames from two sources")
    parser.add_argument("--bench", action="store_true", help="measure what publish costs the caller and exit")
    parser.add_argument("--serve", default="127.0.0.1:8080", help="HOST:PORT to listen on (default %(default)s)")
    parser.add_argument("--serve-token", default=None, help="required for a non-loopback host")
    parser.add_argument("--settings", type=Path, default=None,
                        help="where a threshold set in the page is kept (default: a temporary folder)")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    args = parser.parse_args(argv)
    if args.bench:
        from .bench import run_bench

        for row in run_bench():
            print(f"{row['overlay']:>9}: publish median {row['unwatched_us']:.1f} us unwatched, "
                  f"{row['watched_us']:.1f} us with one MJPEG client, {row['no_overlay_us']:.1f} us without overlay")
        return 0
    if not args.demo:
        parser.error("choose --demo or --bench; fgad-run --serve shows a real line")
    try:
        host, port = parse_serve_address(args.serve)
        settings_path = args.settings or Path(tempfile.mkdtemp(prefix="fgad-liveview-")) / "liveview.json"
        settings = ViewSettings(host=host, port=port, token=args.serve_token, settings_path=settings_path)
        threshold = load_persisted_threshold(settings_path)
        view = LiveView(settings, threshold=0.5 if threshold is None else threshold)
        url = view.start()
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .demo import run_demo

    print(f"live view demo on {url}{'?token=…' if args.serve_token else ''} (threshold kept in {settings_path})")
    try:
        run_demo(view, fps=args.fps, seconds=args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        view.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
