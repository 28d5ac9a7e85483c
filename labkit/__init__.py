"""labkit: container images from the kernel up."""


def _explain_name_errors() -> None:
    """In a notebook, a NameError usually means a cell ran before the cells it builds on (a
    learner coming back to a lesson, or running one cell of it): say so under the traceback."""
    import sys
    ipython = sys.modules.get("IPython")     # never import it: a `labkit` command must start fast
    shell = ipython.get_ipython() if ipython else None
    if shell is None or getattr(shell, "_labkit_names", False):
        return

    def explain(shell, etype, value, tb, tb_offset=None):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        print(f"labkit: {value}. This cell uses something an earlier cell makes: run the lesson's "
              "first cell (its set-up) and the cells above this one again, top to bottom.")

    shell.set_custom_exc((NameError,), explain)
    shell._labkit_names = True


_explain_name_errors()
