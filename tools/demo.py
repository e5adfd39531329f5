"""``ansim demo``: the main story, end to end on this machine (see demo_story).

The story's simulators and their test-only dependencies load only when the command runs."""


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="run the main story end to end on this machine")
    p.set_defaults(run=run)


def run(args):
    from . import demo_story
    return demo_story.run(args)
