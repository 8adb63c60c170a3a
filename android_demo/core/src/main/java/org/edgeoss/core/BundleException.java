package org.edgeoss.core;

/** A bundle that cannot be used, with a message meant for the person holding the phone. */
public class BundleException extends Exception {
    private static final long serialVersionUID = 1L;

    public BundleException(String message) {
        super(message);
    }
}
