"""``python -m local``: the local stack in the foreground.

Imports happen inside main(): spawned worker processes re-import this module (as
``__mp_main__``) and must not pull in the stack.
"""


def main() -> None:
    from local.cli import main as cli_main

    raise SystemExit(cli_main())


if __name__ == "__main__":
    main()
