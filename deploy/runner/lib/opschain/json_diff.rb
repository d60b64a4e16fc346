# frozen_string_literal: true

module OpsChain
  # RFC 6902 operations turning one JSON value into another: objects member by member, anything else replaced.
  module JsonDiff
    def self.diff(before, after, path = '')
      return [] if before == after
      return [{ 'op' => 'replace', 'path' => path, 'value' => after }] unless before.is_a?(Hash) && after.is_a?(Hash)

      ops = []
      before.each_key { |key| ops << { 'op' => 'remove', 'path' => "#{path}/#{escape(key)}" } unless after.key?(key) }
      after.each do |key, value|
        child = "#{path}/#{escape(key)}"
        ops.concat(before.key?(key) ? diff(before[key], value, child) : [{ 'op' => 'add', 'path' => child, 'value' => value }])
      end
      ops
    end

    def self.escape(key) = key.to_s.gsub('~', '~0').gsub('/', '~1')
  end
end
