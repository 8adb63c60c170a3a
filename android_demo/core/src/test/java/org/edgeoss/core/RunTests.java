package org.edgeoss.core;

import org.junit.runner.JUnitCore;
import org.junit.runner.Result;
import org.junit.runner.notification.Failure;

/** Runs the test classes named on the command line; the last line is "N passed, M failed". */
public final class RunTests {
    private RunTests() {
    }

    public static void main(String[] args) throws ClassNotFoundException {
        Class<?>[] classes = new Class<?>[args.length];
        for (int i = 0; i < args.length; i++) classes[i] = Class.forName(args[i]);
        Result result = new JUnitCore().run(classes);
        for (Failure f : result.getFailures()) {
            System.out.println("FAIL " + f.getTestHeader());
            for (String line : f.getTrace().split("\n")) {
                boolean frameworkFrame = line.startsWith("\tat org.junit.") || line.startsWith("\tat java.base/");
                if (!frameworkFrame) System.out.println(line);
            }
        }
        int failed = result.getFailureCount();
        System.out.println((result.getRunCount() - failed) + " passed, " + failed + " failed");
        System.exit(failed == 0 && result.getRunCount() > 0 ? 0 : 1);
    }
}
