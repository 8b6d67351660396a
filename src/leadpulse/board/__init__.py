"""The sales board, `GET /board`: hot leads, a live feed of handoffs, a page per lead (views.py)."""
