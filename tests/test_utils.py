"""Tests for gradlab.utils."""
