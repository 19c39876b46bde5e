"""Animating a photo with a video: the driving signals' filters, relative motion, paste-back and video files."""
