"""Tests for gradlab.plot."""
