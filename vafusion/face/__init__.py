"""Faces in raw video: detection (:mod:`.detect`), 5-point alignment to the ArcFace crop (:mod:`.align`)
and following a subject from frame to frame (:mod:`.track`). dlib's models load through
:mod:`vafusion.weights.dlib`."""
