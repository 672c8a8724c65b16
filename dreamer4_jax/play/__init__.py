"""Play a trained world model in a browser: `python -m dreamer4_jax.play --workdir=runs/demo`.

session.py holds the model logic (no HTTP), server.py the web app, static/ the page.
"""
