"""From a trained run to per-frame predictions: loading runs (:mod:`.bundle`), the video and audio passes
(:mod:`.video`), the :class:`~.predictor.Predictor`, output files (:mod:`.writers`, :mod:`.overlay`), the
ABAW submission (:mod:`.submit`) and ONNX export (:mod:`.export`, :mod:`.onnx_net`)."""
