//! Browser detection: user agent + adapter features/limits -> BrowserProfile.
