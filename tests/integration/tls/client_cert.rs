//! Client certificates (`client_auth`) and route `client_cert` rules.
