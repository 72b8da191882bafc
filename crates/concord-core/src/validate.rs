//! Structural validation of y-websocket frames before yrs decodes them.
