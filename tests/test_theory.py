"""Tests for gradlab.theory."""
