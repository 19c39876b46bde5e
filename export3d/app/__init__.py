"""The web demo: ``python -m export3d.app --checkpoint RUN`` serves a local page that animates a photo.

- :mod:`~export3d.app.__main__`: the command line (flags, start-up checks, the temporary folder, serving).
- :mod:`~export3d.app.engine`: the model's side, with no Gradio in it: photos and their faces cached by content,
  animation through :class:`~export3d.animation.animator.Animator`, and the edits (novel views and the learned
  basis, paper Fig. 9) rendered from one cached source encoding and tri-plane.
- :mod:`~export3d.app.charts`: the driving signal plotted over time (matplotlib).
- :mod:`~export3d.app.examples`: the example inputs the app makes itself (the astronaut, a rolled clip of her).
- :mod:`~export3d.app.page`: the Gradio page, and how it shows the command line's error messages.

Gradio, matplotlib and the browser-test driver come with the ``app`` extra (``pip install -e '.[app]'``); nothing
here imports Gradio until the server starts, so ``--help`` and the engine work without it.
"""
