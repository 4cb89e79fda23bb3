"""Tests for gradlab.monitor."""
