"""Texts shipped with gradlab (read by :func:`gradlab.data.load_text`); see README.md here."""
