"""Tests for gradlab.exercises."""
