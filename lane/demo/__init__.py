"""`lane demo`: the classic a -> b -> c -> d topology on 127.0.0.1 behind real gateway and sidecars."""
